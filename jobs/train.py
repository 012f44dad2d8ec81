"""`gaga-train`: placeholder until its issue lands."""

from jobs.common import not_implemented


def main() -> None:
    not_implemented("gaga-train", "Distributed training on Ray Train")


if __name__ == "__main__":
    main()
