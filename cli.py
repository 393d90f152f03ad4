"""`python cli.py <subcommand>` from a checkout: the same command as the installed `yocto`."""

import sys

from yocto_fn.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python cli.py"))
