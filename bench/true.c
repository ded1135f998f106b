/* The smallest program there is, linked statically: fork+exec+exit of it is the floor for
 * starting any VMM process (bench/boot.sh, "machine bounds"). */
int main(void)
{
	return 0;
}
