"""`gaga-generate`: placeholder until its issue lands."""

from jobs.common import not_implemented


def main() -> None:
    not_implemented("gaga-generate", "Embedded default data")


if __name__ == "__main__":
    main()
