# Tests only: a Python started with this folder on PYTHONPATH imports the stand-in google.colab at start-up, as
# every Colab kernel does, so that the notebooks take it for a Colab runtime.
import google.colab  # noqa: F401
