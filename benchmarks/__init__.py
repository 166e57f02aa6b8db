"""Benchmarks and checks that need a GPU to mean anything (each also runs on a CPU at tiny sizes).

gpu_check.sh drives them; tests/q0/test_benchmarks.py runs their Python parts on a CPU."""
