module bitbucket-operator.local/hack/pause

go 1.25.0
