"""`gaga-sweep`: placeholder until its issue lands."""

from jobs.common import not_implemented


def main() -> None:
    not_implemented("gaga-sweep", "Ablation sweeps")


if __name__ == "__main__":
    main()
