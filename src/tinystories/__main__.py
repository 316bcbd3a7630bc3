"""`python -m tinystories` (and `torchrun -m tinystories`) run the CLI."""

from tinystories.cli import main

if __name__ == "__main__":
    main()
