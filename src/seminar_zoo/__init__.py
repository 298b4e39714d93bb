"""seminar-zoo: a PyTorch Lightning model zoo for lifelong sequential recommendation."""
__version__ = "0.1.0"
