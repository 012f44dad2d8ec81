"""`gaga-eval`: placeholder until its issue lands."""

from jobs.common import not_implemented


def main() -> None:
    not_implemented("gaga-eval", "Evaluation job")


if __name__ == "__main__":
    main()
