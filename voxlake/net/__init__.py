"""DICOM networking (PS3.7, PS3.8): the DIMSE server that receives into the lake."""

from voxlake.net.scp import DimseServer, Peer, load_peers

__all__ = ["DimseServer", "Peer", "load_peers"]
