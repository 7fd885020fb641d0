from sealserve.cli import main

main()
