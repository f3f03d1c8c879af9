"""A stand-in for ``google.colab.drive`` (tests only): ``mount`` makes
``<mountpoint>/MyDrive`` a link to the folder ``$COLAB_STUB_DRIVE``, which
plays the student's Google Drive and outlives the runtimes of a test."""
import os


def mount(mountpoint, force_remount=False):
    os.makedirs(mountpoint, exist_ok=True)
    link = os.path.join(mountpoint, "MyDrive")
    if not os.path.exists(link):
        os.symlink(os.environ["COLAB_STUB_DRIVE"], link)
    print(f"Mounted at {mountpoint}")
