from voxlake.net.scp import main

main()
