/*
 * The pod sandbox process of the single-node cluster harness (operator/overcommit/localcluster):
 * the first process of every pod, holding its namespaces while the pod's containers come and go.
 * It sleeps until SIGINT or SIGTERM ends it and, as PID 1 of a pod that shares its PID namespace,
 * reaps the zombies it inherits. Built static (gcc -static) into an image FROM scratch, so it
 * needs nothing from any registry.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int signo) {
  (void)signo;
  _exit(0);
}

static void on_child(int signo) {
  (void)signo;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

static int handle(int signo, void (*handler)(int), int flags) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_handler = handler;
  action.sa_flags = flags;
  sigemptyset(&action.sa_mask);
  return sigaction(signo, &action, NULL);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    puts("overcommit-pause 1");
    return 0;
  }
  if (handle(SIGINT, on_stop, 0) < 0 || handle(SIGTERM, on_stop, 0) < 0 ||
      handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0) {
    perror("sigaction");
    return 1;
  }
  for (;;) {
    pause();
  }
}
