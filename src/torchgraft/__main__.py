"""``python -m torchgraft`` is ``graft``."""

from torchgraft.cli.graft import main

if __name__ == "__main__":
    main()
