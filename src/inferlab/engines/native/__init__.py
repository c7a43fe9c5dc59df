"""inferlab's own compiled decoder: C source, its build on this machine, its Python driver."""
