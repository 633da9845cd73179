"""distren: a federated distributed renderer.

Independent servers, each named ``distren://NAME/``, accept render jobs from clients, share
their frames with each other, and hand back the finished frames as one tarball.
"""

__version__ = "0.1.0"
