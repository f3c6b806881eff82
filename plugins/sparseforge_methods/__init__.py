"""sparseforge's in-tree methods, one module per paper, registered through the same entry-point group
(``sparseforge.methods``) as third-party plugins."""
