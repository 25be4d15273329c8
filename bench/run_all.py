"""`make bench`: run every benchmark and write bench/results/*.json and *.md."""

from __future__ import annotations

import logging

from transformers.utils import logging as hf_logging

from bench import foundation, kernels, methods


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    foundation.main()
    kernels.main()
    methods.main([])


if __name__ == "__main__":
    main()
