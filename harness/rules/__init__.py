"""The benchmark's rules, as data and the small functions that read them: the tracks (``tracks``: data,
budget, sequence length, built-in and user TOML), the compute classes and their caps (``compute``), the
official data hashes and known loss floors (``official_hashes``) and which folders a method may read besides its own (``allow_read``).

Who may import it: anyone, the confined processes included (the method's context reads its track here).
It imports only :mod:`harness.common` and :mod:`harness.errors`."""
