"""The offline demo world: procedural 64x64 cartoon faces, an exact editor and two small
classifiers with a planted dependency, so diffex runs end to end with no download."""
