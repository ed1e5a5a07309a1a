"""Operating an archive, above the pipeline: keeping it current (`continuous`, `run`),
checking it (`verify`), reporting on it (`coverage`, `status`; `progress` on a
terminal), and the `demo` against the package's emulator. Import from the module that
does the job."""
