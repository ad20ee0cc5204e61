// Package target names and opens the places a repository can live: a
// local directory (the ImageStore), a directory of an NFSv3 export, or an
// S3 bucket prefix. It turns ZStack's fsInfo system tag and the CLI's
// repository URLs into one Spec, checks every option before anything
// connects, and opens the matching chunkstore driver, bound to a source
// address when the backup network asks for one.
package target
