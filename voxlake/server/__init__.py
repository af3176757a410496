"""The DICOMweb server over a lake (PS3.18): QIDO-RS, WADO-RS, WADO-URI, STOW-RS, and the OHIF viewer.

:func:`voxlake.server.app.create_app` builds the FastAPI application; ``voxlake serve`` runs it with
uvicorn. Queries are answered from the lake's in-memory :class:`~voxlake.lake.catalog.Catalog`,
headers from its ``meta`` column, pixels by byte range from the files the lake points at. FastAPI is
imported only here, never by ``import voxlake``.
"""
