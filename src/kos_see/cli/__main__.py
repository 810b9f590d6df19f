from kos_see.cli.app import main

main()
