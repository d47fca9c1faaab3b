"""Task bodies shared by the throughput benchmark's peers (importable by every process)."""
import time


def noop(x=None):
    return x


def sleep_ms(x=None):
    time.sleep(0.001)
    return x


def pool_chunksize(n: int, workers: int) -> int:
    """The chunk size multiprocessing.Pool.map picks for ``n`` items on ``workers``
    processes (four chunks per worker, rounded up)."""
    size, extra = divmod(n, workers * 4)
    return max(1, size + (1 if extra else 0))
