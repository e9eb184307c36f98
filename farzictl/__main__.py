from farzictl.app import main

main()
