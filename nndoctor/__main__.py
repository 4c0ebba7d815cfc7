"""``python -m nndoctor``: the same program as the ``nndoctor`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
