"""`python -m cmm_cache ...` (and `torchrun ... -m cmm_cache ...`) is the same as the `cmm-cache` console script."""

from cmm_cache.cli.main import main

main()
