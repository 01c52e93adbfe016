// Command kube is one multi-call binary for kube-apiserver, kube-controller-manager,
// kube-scheduler and kubectl of a single pinned Kubernetes release.
//
// Why one binary: the four programs share almost all of k8s.io/kubernetes, so linking them once
// saves three large links (minutes on a 2-core machine) and ~300 MB of cache. The program to run
// is chosen by the name it was started under (symlinks such as kube-apiserver -> kube) or, when
// started as "kube", by the first argument ("kube kube-apiserver --help").
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones, as the upstream kube-apiserver/controller-manager mains do

	"github.com/spf13/cobra"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // client auth plugins, as upstream kubectl does
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// servers maps a program name to the constructor of its cobra command.
var servers = map[string]func() *cobra.Command{
	"kube-apiserver":          func() *cobra.Command { return apiserver.NewAPIServerCommand() },
	"kube-controller-manager": func() *cobra.Command { return controllermanager.NewControllerManagerCommand() },
	"kube-scheduler": func() *cobra.Command {
		return scheduler.NewSchedulerCommand()
	},
}

func names() []string {
	out := []string{"kubectl"}
	for name := range servers {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func runKubectl() int {
	// Same order as upstream cmd/kubectl: verbosity first, so klog works while the command is built.
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
	return 0
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := servers[name]; !ok && name != "kubectl" {
		if len(os.Args) < 2 {
			fmt.Fprintf(os.Stderr, "usage: %s PROGRAM [ARGS...]  (PROGRAM is one of %v)\n", name, names())
			os.Exit(2)
		}
		// "kube kube-apiserver --flags": drop our own name so the program sees its usual argv.
		os.Args = os.Args[1:]
		name = os.Args[0]
	}
	if name == "kubectl" {
		os.Exit(runKubectl())
	}
	newCommand, ok := servers[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown program %q: expected one of %v\n", name, names())
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}
