"""Workflows that add commands to the command line: the jamming-line search (``dlphase jamming``), the kernel
export (``dlphase kernel``) and the Hessian-spectrum plot."""
