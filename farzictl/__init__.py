"""farzictl: the command-line interface over the farzi library."""
