"""One module per merge method: a pure function holding the math plus its ``MethodSpec``."""
