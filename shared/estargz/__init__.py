"""The eStargz / stargz / zstd:chunked blob format: footer, TOC, random-access reader, writer."""
