"""`gaga-reenact`: placeholder until its issue lands."""

from jobs.common import not_implemented


def main() -> None:
    not_implemented("gaga-reenact", "Evaluation job / reenactment CLI")


if __name__ == "__main__":
    main()
