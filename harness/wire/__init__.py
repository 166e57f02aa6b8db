"""What crosses a socket between a harness process and a confined one: the one framing of every socket
(``framing``: JSON header and raw bytes, never pickle, bounds checked from the prefix; a buffered reader for
the data server's requests, a reader into the receiver's buffer for the evaluation worker's bulk) and the data
server protocol's bounds and error names (``limits``).

Who may import it: both ends of every socket, so the confined processes too. It imports only
:mod:`harness.errors`, and nothing heavy: the method's process imports it before it enters the sandbox,
which must happen while that process has one thread."""
