module github.com/willscott/go-nfs-client

go 1.19

require github.com/rasky/go-xdr v0.0.0-20170124162913-1a41d1a06c93
