"""A stand-in for ``google.colab.files`` (tests only): ``upload`` "chooses"
the file ``$COLAB_STUB_UPLOAD``, copies it into the current folder, as Colab
does, and returns ``{name: bytes}``; without that variable it is a cancelled
upload (``{}``)."""
import os
import shutil


def upload():
    source = os.environ.get("COLAB_STUB_UPLOAD")
    if not source:
        return {}
    name = os.path.basename(source)
    shutil.copyfile(source, name)
    with open(name, "rb") as f:
        return {name: f.read()}
