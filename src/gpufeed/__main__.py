from gpufeed.cli import main

main()
