"""Helpers shared by test modules (imported as ``tests.helpers.<module>``; no test module imports another).

- :mod:`tests.helpers.models`: tiny seeded models and a counting wrapper for the attack tests, the MLP the
  server tests serve;
- :mod:`tests.helpers.attacks`: attacks written for the tests, named by studies as ``tests.helpers.attacks:<Class>``;
- :mod:`tests.helpers.attack_cases`: the cases, black boxes and checks shared by the attack tests (tiny score and
  decision cases, the run helper, paired-batch checks, the linear model's closed-form distances);
- :mod:`tests.helpers.tiny_eval`: an importable ``rfd_tiny`` module (tiny classifier + tiny attacks) and a small
  study on it, for the eval, demo and Ray tests (see the ``tiny_eval`` fixture in tests/conftest.py).

Fixtures (``linear_model``, ``bundled_eval``, ``shipped_checkpoint``, ``reference_model``, ``tiny_eval``, ...) live
in tests/conftest.py and the per-folder conftest.py files instead."""
