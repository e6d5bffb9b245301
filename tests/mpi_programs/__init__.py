"""Programs that tests/test_parallel_mpi.py runs under mpiexec, and their model."""
