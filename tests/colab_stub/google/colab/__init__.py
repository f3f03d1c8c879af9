"""A stand-in for Colab's ``google.colab`` (tests only): its presence in
``sys.modules`` is what the notebooks take for a Colab runtime."""
