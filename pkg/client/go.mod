module github.com/pulseboard/pulseboard/pkg/client

go 1.26.8

require (
	github.com/google/uuid v1.6.0
	github.com/valyala/fastjson v1.6.10
)
