"""SFTP servers (asyncssh).

asyncssh imports cryptography's DSA support, which cryptography >= 51 marks deprecated
with a warning on every import: printed on stderr by every command that touches SFTP,
it would bury the one line a user must read (and skynet never offers DSA keys). That
one warning, from asyncssh's import only, is silenced here, before any module of this
package imports asyncssh.
"""
import warnings

warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh(\.|$)")
