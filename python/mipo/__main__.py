"""``python -m mipo`` (also what ``accelerate launch -m mipo train ...`` runs)."""

from mipo.cli import main

if __name__ == "__main__":
    main()
