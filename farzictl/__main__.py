from farzictl.app import entry

entry()
