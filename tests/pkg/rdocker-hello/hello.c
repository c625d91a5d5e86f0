/* rdocker-hello: the project's own test package, built in the testbed. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *who = argc > 1 ? argv[1] : "world";
    printf("hello, %s\n", who);
    return strcmp(who, "fail") == 0;
}
