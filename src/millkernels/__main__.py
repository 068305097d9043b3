"""``python -m millkernels ...``: the ``millkernels`` command (also what ``torchrun -m`` runs)."""

from millkernels.cli import app

if __name__ == "__main__":
    app(prog_name="millkernels")
