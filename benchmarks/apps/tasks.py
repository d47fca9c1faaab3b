"""Task bodies shared by the throughput benchmark's peers (importable by every process)."""
import time


def noop(x=None):
    return x


def sleep_ms(x=None):
    time.sleep(0.001)
    return x
