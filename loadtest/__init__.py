"""Load tests: locust users (`locustfile.py`), seeded workloads and the side-by-side benchmark."""
