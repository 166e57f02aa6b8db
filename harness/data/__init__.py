"""The data, from source documents to token windows: sources (``documents``, ``fineweb``, ``local_files``,
``synthetic``), tokenizers, split preparation and its manifest of hashes (``prepare``, ``manifest``),
Slowrun's own file format (``slowrun_files``), the zero-copy store that serves windows and documents
(``store``, ``long_documents``), a method's fitness carve (``fitness``) and the maintainers' held-out test split
(``holdout``).

Who may import it: the harness's side only (the data server, evaluation, the runner). The method's process
never holds prepared data; it asks the data server for every batch, so confined code may not import this
package."""
