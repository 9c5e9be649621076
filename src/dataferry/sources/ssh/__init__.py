"""SFTP over SSH (asyncssh): the connector, the session, the TCP layer under it."""

from .session import SSHConnector, SSHReader, SSHSource

__all__ = ["SSHConnector", "SSHReader", "SSHSource"]
