"""Tools over the stack files and the program: `tensile preview`, `tensile team add`,
`tensile job render`, `make validate`."""
