module github.com/pulseboard/pulseboard/api

go 1.26.8
